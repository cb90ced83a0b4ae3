//! A valid component that exports a world other than `sluice:middleware/middleware`: sluice must
//! refuse it at load with a message naming the middleware.
wit_bindgen::generate!({
    inline: r#"
        package test:wrong-world;
        world greeter {
            export greet: func(name: string) -> string;
        }
    "#,
});

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
