//! Images from outside: archives (`docker save`, OCI layouts), registries, references and
//! pull secrets.

pub mod archive;
pub mod keyring;
pub mod reference;
pub mod registry;
