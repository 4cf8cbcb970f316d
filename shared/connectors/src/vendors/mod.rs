//! Every vendor crmbridge ships, one folder each: the code, split as the
//! vendor needs, and `API.md`, the vendor facts the code relies on with
//! their sources. Adding a vendor is its folder plus one name below.

macro_rules! vendors {
    ($($vendor:ident),* $(,)?) => {
        $(pub mod $vendor;)*

        /// Every vendor, each built by its folder's `vendor()`.
        pub fn all() -> Vec<crate::Vendor> {
            vec![$($vendor::vendor()),*]
        }

        /// The app ids of every vendor folder, for the registry's own checks.
        pub const FOLDERS: &[&str] = &[$(stringify!($vendor)),*];
    };
}

vendors! {
    calltouch,
    generic,
    http,
    hubspot,
    kado,
    moysklad,
    nethunt,
    planfix,
    retailcrm,
    ringostat,
    verbox,
    worksection,
    zoho,
}
