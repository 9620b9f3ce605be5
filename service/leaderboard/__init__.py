"""The tenant's leaderboard: every model version and its latest audit."""
