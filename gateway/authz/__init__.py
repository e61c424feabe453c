"""Authorization: Cedar policies over the entity model of shared/design/cedar.md (Z1-Z4)."""
