"""Status: the one owner of each message's status (decision), run by stage."""
