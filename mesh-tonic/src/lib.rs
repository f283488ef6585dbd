//! mesh-tonic
