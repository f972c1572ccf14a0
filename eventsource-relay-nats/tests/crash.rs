fn main() {} // placeholder until the file is written
