"""The preference centre: what each person chose about their messages (base.py), kept on
memory or Redis, and the signed links that unsubscribe them (unsubscribe_token.py)."""
