//! The node's side of the fleet: the [`reporter`] sends reports to the controller and brings
//! back the fleet's wishes; [`follow`] applies them (policy and mode) and keeps what was applied.

pub mod follow;
pub mod reporter;
