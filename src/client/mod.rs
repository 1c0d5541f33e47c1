//! The bundled interactive client.
