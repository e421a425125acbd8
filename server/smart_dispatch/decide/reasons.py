"""Machine-readable reason codes carried in `DecideResponse.reasons` (documented in README)."""

CHANNEL_SELECTED = "channel_selected"  # rule/ranking chose the first step's channel
QUIET_HOURS = "quiet_hours"  # deferred (or dropped) because of the recipient's quiet hours
CAP_EXCEEDED = "cap_exceeded"  # a frequency cap was full for a channel
DEFERRED_BY_CAP = "deferred_by_cap"  # deferred until every cap has room again
DIGEST_BY_CAP = "digest_by_cap"  # over a cap: folded into one message when the cap has room again
EXPIRED = "expired"  # could not go out before message.not_after
DENY_LISTED = "deny_listed"  # recipient is on the deny list
ALLOW_LISTED = "allow_listed"  # recipient is on the allow list: caps bypassed
CAPS_BYPASSED = "caps_bypassed"  # a rule exempts this message from caps
QUIET_HOURS_BYPASSED = "quiet_hours_bypassed"  # a rule exempts this message from quiet hours
SUPPRESSED_BY_RULE = "suppressed_by_rule"  # a rule's `suppress` effect
NO_REACHABLE_CHANNEL = "no_reachable_channel"  # no channel with an address, allowed and not opted out
DUPLICATE = "duplicate"  # message id already decided: its reservation is reused
STORE_UNAVAILABLE = "store_unavailable"  # the store failed; category policy is fail-open
LEARNED_CHOICE = "learned_choice"  # the `choose` effect ranked the channels by learned engagement
SEND_TIME = "send_time"  # the `send_time` effect picked the send instant (detail: the slot's numbers)
LOW_EXPECTED_ENGAGEMENT = "low_expected_engagement"  # below the rule's min_expected_engagement
OPTED_OUT = "opted_out"  # the person opted out of the category on every channel left (preferences)
MUTED = "muted"  # the person muted all but required categories until an instant: deferred (preferences)
PERSONAL_QUIET_HOURS = "personal_quiet_hours"  # deferred to the end of the person's own quiet hours
