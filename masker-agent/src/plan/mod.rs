//! Column plans: what each result column is masked with.

pub mod catalog;
pub mod lineage;
