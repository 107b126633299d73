//! Image sources, layer decoding, flattening and the chunk/compress/hash pipeline of cvmfs-oci.
