"""OCI image-spec and distribution-spec helpers shared by the pussh client and the registry."""
