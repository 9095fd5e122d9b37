"""The participants service."""

# How a household on its own sends its round (see community.Participant.play): "round", its
# reading, orders and finish in one request of its own; "single", one message for each.
REQUESTS = ("round", "single")
