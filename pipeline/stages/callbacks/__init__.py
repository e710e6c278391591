"""Customer status callbacks: the SSRF guard (ssrf) and the pinned-address HTTP sender (sender)."""
