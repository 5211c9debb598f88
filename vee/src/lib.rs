//! meterflow's validation, estimation and editing (VEE), pure: a meter's channels in,
//! exceptions and the rows of a new version out, no I/O. Actual reads are never changed:
//! estimates (quality `E`) fill gaps, substitutes (`S`) replace failed values, and an estimate
//! a later actual read makes unneeded is withdrawn (`A`); storage keeps every version
//! (`readings_vee`), and "as billed" is the actual reads overlaid by the latest.
//!
//! - [`config`]: `[vee]`, every rule's and method's parameters, checked by key;
//! - [`model`]: the rules (fixed ids), methods, qualities, the input and output types;
//! - [`run`]: one meter through every rule and method ([`run_meter`]).

pub mod config;
mod error;
pub mod model;
pub mod run;

pub use config::{Params, VeeConfig};
pub use error::VeeError;
pub use model::{
    Channel, ChannelKind, Exception, Meter, Method, Outcome, Point, Quality, Rule, VeeRow,
};
pub use run::{run_meter, Period};
