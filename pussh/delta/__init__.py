"""Sub-layer delta: a layer the server lacks, rebuilt there from a similar layer it has (the one
the tag's current image has at the same position) plus the chunks that differ. `helper` runs on
the server (stdlib only), `client` drives it, `classic` fits it into docker load, `when` decides."""
