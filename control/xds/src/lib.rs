//! The xDS server: ADS streams (SotW and delta), version/nonce bookkeeping, NACK handling.
