"""The `tgan` command (launch/cli.py) and its script wrappers; recipes/ and sweeps/ hold the YAML it reads."""
