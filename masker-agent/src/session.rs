//! One client connection: startup handshake, upstream connection, relay.
