//! Signed CardTrader webhooks: verification, de-duplication and order application.
