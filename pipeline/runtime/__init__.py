"""What every stage worker shares: the Quix Streams app factory and dead-lettering."""
