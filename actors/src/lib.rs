//! The dynakv node: actors over the core crate. Built in the next issue.
