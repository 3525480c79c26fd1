"""The trust engine: policies, fast rules, client store, trust agent."""
