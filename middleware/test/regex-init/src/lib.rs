//! Compiles 200 regexes into a `RegexSet` in `init` (milliseconds of work), then per request only
//! matches the path against it and reports how many matched in request header `x-regex-matches`.
//! Config `{ "warm": true }` also runs one match in `init`, so the lazy DFA caches the regex
//! engine builds on first use are part of the pre-initialized snapshot too.
use regex::RegexSet;
use sluice_sdk::*;

struct RegexInit {
    set: RegexSet,
}

impl Middleware for RegexInit {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let patterns: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    r"^/api/v{}/(users|orders|items)/[0-9]+(/[a-z]+)*$|^/static/{i}/\w+\.(css|js)$",
                    i % 7
                )
            })
            .collect();
        let set = RegexSet::new(&patterns).map_err(|e| e.to_string())?;
        if config.contains("\"warm\":true") {
            set.matches("/api/v3/users/42/profile");
        }
        let mut registration = Registration::phases(Phases::REQUEST_HEADERS);
        registration.request_headers = Some(Vec::new());
        Ok((RegexInit { set }, registration))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let path = req.path_with_query.split('?').next().unwrap_or_default();
        let matches = self.set.matches(path).iter().count();
        RequestDecision::Next((HeaderEdits::set("x-regex-matches", matches.to_string()), Vec::new()))
    }
}

export_middleware!(RegexInit);
