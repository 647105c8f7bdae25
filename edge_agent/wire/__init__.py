"""Wire messages and topics: validated, frozen, versioned values; no paho."""
