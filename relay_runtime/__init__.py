"""relay-runtime: a trio-native runtime that lets a chat agent live behind a relay connector."""
