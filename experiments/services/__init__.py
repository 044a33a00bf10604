"""Write side: every state change goes through a function here (entity_verb, keyword-only, atomic)."""
