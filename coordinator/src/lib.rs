//! dfs coordinator (placeholder until its issue lands).
