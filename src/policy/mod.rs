//! Policy: every request decided by Cedar. Owns the schema, the shipped base policies,
//! compilation of scope maps into Cedar policies, the sliced and cached policy sets,
//! loading/validating user policy files, decision auditing, and the policy tools.
