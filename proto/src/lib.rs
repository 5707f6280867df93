//! pulse's gRPC protocol, package `pulse.v1`, as tonic client and server code.

pub mod validate;

pub mod v1 {
    tonic::include_proto!("pulse.v1");

    /// The encoded descriptors of every pulse message and service, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pulse_descriptor");
}
