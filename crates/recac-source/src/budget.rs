//! A source's spend per period and whether its budget holds new tickets (pure).
//!
//! The record is a [`Ledger`] (shared with the namespace budgets of the task controller, see
//! [`recac_runtime::spend`]): what of each task's spend (its `status.spend`, summed over
//! attempts by the task controller) is already counted, and the totals of each period (the
//! UTC day and the UTC month). Each poll adds what the source's tasks spent since they were
//! last counted to the current periods ([`record`]), and the ledger is written in one
//! compare-and-swap ([`crate::ledger`]), so a spend is counted exactly once whatever
//! restarts or failovers come in between, and never recomputed from tasks that are gone.

pub use recac_runtime::spend::{
    Amounts, Held, Ledger, TaskSpend, day_key, held, month_key, record, task_spend,
};
