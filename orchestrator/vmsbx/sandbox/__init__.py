"""Pure renderers of the second wall: a policy plus a command in, argv and files out."""
