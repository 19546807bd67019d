//! Pure types shared by several capabilities: identifiers with checked constructors. No I/O here.

mod ids;

pub use ids::{BlueprintId, InvalidId, UserId};
