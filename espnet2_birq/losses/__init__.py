"""Self-supervised losses in ESPnet's ``AbsSSLLoss`` style."""
