//! dfs datanode (placeholder until its issue lands).
