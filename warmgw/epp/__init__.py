"""warmgw as the Endpoint Picker (ext_proc) behind Envoy."""
