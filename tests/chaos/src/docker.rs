//! Containers on a user-defined Docker network, for the partition scenario.
