//! herd-console: the operator console and the scripting CLI (`herd`).
