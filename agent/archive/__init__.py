"""Provisioning archives (``certificates-omni_<device-name>.zip``): make, validate, install."""
