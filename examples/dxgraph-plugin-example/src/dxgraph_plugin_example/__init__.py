"""An example dxgraph plugin: one file, one typed tool."""
