//! mesh-hyper
