//! dfs operator (placeholder until its issue lands).
