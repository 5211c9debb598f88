//! Revenue protection, pure: the daily energy of each meter by billing's rule ([`energy`]),
//! the energy balance of a group of meters against its head meter ([`balance`]), and the
//! suspects list ([`suspects`]). The CLI brings the readings, the registry and the events;
//! nothing here reads or writes storage.

pub mod balance;
pub mod energy;
mod error;
pub mod suspects;

pub use error::RevenueError;
