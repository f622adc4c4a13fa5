//! Model checks of pcpalloc live in tests/ and run under `RUSTFLAGS="--cfg loom"`.
