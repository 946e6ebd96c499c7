//! Model families, one file each, with Hugging Face weight names by construction.
pub mod gpt2;
pub mod hf;
