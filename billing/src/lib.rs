//! meterflow's billing engine, pure: readings in, rows out, no I/O. The storage crate's read
//! model brings each register's readings from ClickHouse or the Parquet tree; the binary
//! prints the rows.
//!
//! - [`register`]: R(B), a register's value at an instant, and what a step adds (resets,
//!   rollovers, reverse runs);
//! - [`engine`]: a [`Bill`] for a [`Query`]: consumption, its split by tariff period, max
//!   demand, one [`BillRow`] per register and period;
//! - [`tariff`]: time-of-use tariff files and the [`Timeline`] they cut a period into;
//! - [`clock`]: local time (`--tz`): reading times, printing them with their offset;
//! - [`config`]: `[billing]` of the config file.

pub mod clock;
pub mod config;
pub mod engine;
mod error;
pub mod register;
pub mod tariff;

pub use clock::Zone;
pub use config::{BillingConfig, RolloverRule};
pub use engine::{kwh_per, register_name, Bill, BillRow, Query};
pub use error::BillingError;
pub use register::{step, ReadKind, Reading, Step, Value};
pub use tariff::{Tariff, Timeline};
