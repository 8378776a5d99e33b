"""`vmsbx verify`: escape attempts against the user's real sandbox, each with a positive control."""
