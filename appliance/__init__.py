"""The sovereign tenant appliance: a dedicated, audited data stack per tenant on hosts the operator owns."""

__version__ = "0.1.0"
