//! The subcommands, one file each.

pub(crate) mod fold;
pub(crate) mod inspect;
pub(crate) mod verify;
