// Placeholder: being written (see issue notes).
export {};
