#!/usr/bin/env python3
"""Drive a Jira server with pycontribs `jira`, through its public API only.

Used by crates/recac-jira-sim/tests/real_clients.rs against `recac jira sim`
in both flavours. The server must be seeded as that test seeds it: project
OPS with OPS-1..OPS-5 labelled `recac-agent` in "To Do", OPS-6 without the
label, the bot user and a user `alice` (display name "Alice Liddell",
alice@example.com).

Every check runs even when an earlier one fails; each prints `ok <name>` or
`FAIL <name>: <why>`. The last line is `RESULT <flavor> <passed>/<total>`, and
the exit status is 0 only when every check passed.
"""

import argparse
import sys
import traceback

from jira import JIRA, JIRAError

JQL = "project = OPS AND labels = recac-agent ORDER BY key ASC"
SEARCH_FIELDS = ["summary", "labels", "status"]
LABELLED = ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def run(self, name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure, go on
            detail = f"{type(e).__name__}: {e}"
            if not isinstance(e, (AssertionError, JIRAError)):
                detail += "\n" + traceback.format_exc()
            self.failed.append(name)
            print(f"FAIL {name}: {detail}", flush=True)
        else:
            self.passed += 1
            print(f"ok {name}", flush=True)


def expect_error(status, fn):
    try:
        fn()
    except JIRAError as e:
        assert e.status_code == status, f"HTTP {e.status_code}, wanted {status}: {e.text}"
        return e
    raise AssertionError(f"no error, wanted HTTP {status}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--flavor", choices=["cloud", "datacenter"], required=True)
    ap.add_argument("--user", required=True, help="Cloud: e-mail; Data Center: user name")
    ap.add_argument("--token", required=True, help="Cloud: API token")
    ap.add_argument("--pat", required=True, help="Data Center: personal access token")
    args = ap.parse_args()
    cloud = args.flavor == "cloud"

    def connect(**extra):
        auth = {"basic_auth": (args.user, args.token)} if cloud else {"token_auth": args.pat}
        auth.update(extra)
        return JIRA(server=args.url, timeout=10, max_retries=1, **auth)

    c = Checks()
    state = {}

    def check_connect():
        j = connect()
        state["jira"] = j
        want = "Cloud" if cloud else "Server"
        assert j.deploymentType == want, j.deploymentType
        assert len(j.server_info()["versionNumbers"]) == 3

    c.run("connect (serverInfo)", check_connect)
    j = state.get("jira")
    if j is None:
        print(f"RESULT {args.flavor} 0/1", flush=True)
        return 1

    def check_myself():
        me = j.myself()
        if cloud:
            assert me["emailAddress"] == args.user, me
            assert me["accountId"], me
        else:
            assert me["name"] == args.user, me
        state["me"] = me

    c.run("myself", check_myself)

    def check_fields():
        ids = {f["id"]: f for f in j.fields()}
        for f in ["summary", "labels", "status", "assignee", "description"]:
            assert f in ids, f"no field {f}"
        assert "key" in ids["issuekey"]["clauseNames"]

    c.run("fields", check_fields)

    def check_issue_fields(issue):
        got = sorted(issue.raw["fields"].keys())
        assert got == sorted(SEARCH_FIELDS), f"{issue.key}: fields {got}"
        assert issue.fields.summary
        assert "recac-agent" in issue.fields.labels
        assert issue.fields.status.name == "To Do", issue.fields.status.name

    def check_paged_search():
        keys = []
        if cloud:
            token = None
            for _ in range(10):
                page = j.enhanced_search_issues(
                    JQL, nextPageToken=token, maxResults=2, fields=list(SEARCH_FIELDS)
                )
                assert len(page) <= 2, len(page)
                for issue in page:
                    check_issue_fields(issue)
                    keys.append(issue.key)
                token = page.nextPageToken
                if not token:
                    break
        else:
            start = 0
            for _ in range(10):
                page = j.search_issues(
                    JQL, startAt=start, maxResults=2, fields=list(SEARCH_FIELDS)
                )
                assert page.total == len(LABELLED), page.total
                for issue in page:
                    check_issue_fields(issue)
                    keys.append(issue.key)
                start += len(page)
                if not len(page) or start >= page.total:
                    break
        assert keys == LABELLED, keys
        # Every page at once, and the default first page.
        everything = j.search_issues(JQL, fields=list(SEARCH_FIELDS), maxResults=False)
        assert [i.key for i in everything] == LABELLED, [i.key for i in everything]
        first = j.search_issues(JQL, fields="summary,labels,status", maxResults=3)
        assert [i.key for i in first] == LABELLED[:3]
        for issue in first:
            check_issue_fields(issue)

    c.run("paged search with several fields", check_paged_search)

    def check_get_issue():
        some = j.issue("OPS-1", fields="summary,labels")
        assert sorted(some.raw["fields"].keys()) == ["labels", "summary"], some.raw["fields"]
        full = j.issue("ops-1")
        assert full.key == "OPS-1"
        assert full.fields.summary == "Build is red"
        # The client's default API version is 2: wiki text, not ADF.
        assert isinstance(full.fields.description, str), full.fields.description
        assert full.fields.project.key == "OPS"
        assert full.permalink().endswith("/browse/OPS-1")

    c.run("get issue", check_get_issue)

    def check_transitions():
        names = {t["name"]: t["id"] for t in j.transitions("OPS-1")}
        assert "Start Progress" in names, names
        j.transition_issue("OPS-1", "Start Progress")
        assert j.issue("OPS-1").fields.status.name == "In Progress"
        j.transition_issue("OPS-1", names.get("Done", "31"), comment="Finished by the driver")
        issue = j.issue("OPS-1")
        assert issue.fields.status.name == "Done"
        assert issue.fields.status.statusCategory.key == "done"
        assert j.comments("OPS-1")[-1].body == "Finished by the driver"
        bad = expect_error(400, lambda: j.transition_issue("OPS-2", "999"))
        assert "999" in bad.text, bad.text

    c.run("transitions", check_transitions)

    def check_comments():
        text = "Started.\n\n{code:python}\nprint('hi')\n{code}"
        added = j.add_comment("OPS-2", text)
        assert added.id
        comments = j.comments("OPS-2")
        assert [x.body for x in comments] == [text], [x.body for x in comments]
        assert j.comment("OPS-2", added.id).body == text
        author = comments[0].author
        assert (author.emailAddress if cloud else author.name) == args.user

    c.run("comment", check_comments)

    def check_user_search():
        if cloud:
            users = j.search_users(query="alice")
            assert [u.accountId for u in users] and users[0].displayName == "Alice Liddell"
        else:
            users = j.search_users(user="alice")
            assert [u.name for u in users] == ["alice"], [u.name for u in users]

    c.run("user search", check_user_search)

    def check_assign():
        assert j.assign_issue("OPS-3", args.user)
        assignee = j.issue("OPS-3").fields.assignee
        assert assignee is not None
        if cloud:
            assert assignee.accountId == state["me"]["accountId"]
        else:
            assert assignee.name == args.user
        assert j.assign_issue("OPS-3", "alice")
        assert j.issue("OPS-3").fields.assignee.displayName == "Alice Liddell"
        # Through edit issue, PUT to the issue's `self` link.
        issue = j.issue("OPS-3")
        if cloud:
            issue.update(fields={"assignee": {"accountId": state["me"]["accountId"]}})
        else:
            issue.update(assignee=args.user)
        assert issue.fields.assignee.displayName == state["me"]["displayName"]
        assert j.assign_issue("OPS-3", None)
        assert j.issue("OPS-3").fields.assignee is None

    c.run("assign", check_assign)

    def check_labels():
        issue = j.issue("OPS-4")
        issue.update(fields={"labels": ["recac-agent", "triaged"]})
        assert issue.fields.labels == ["recac-agent", "triaged"], issue.fields.labels
        issue.add_field_value("labels", "recac-claimed")
        issue = j.issue("OPS-4")
        assert issue.fields.labels == ["recac-agent", "triaged", "recac-claimed"], issue.fields.labels
        issue.update(update={"labels": [{"remove": "triaged"}]}, summary="Renamed by the driver")
        issue = j.issue("OPS-4")
        assert issue.fields.labels == ["recac-agent", "recac-claimed"], issue.fields.labels
        assert issue.fields.summary == "Renamed by the driver"

    c.run("labels", check_labels)

    def check_properties():
        r = j.add_issue_property("OPS-5", "recac.claim", {"owner": "driver", "attempt": 1})
        assert r.status_code in (200, 201), r.status_code
        prop = j.issue_property("OPS-5", "recac.claim")
        assert prop.raw["value"] == {"owner": "driver", "attempt": 1}, prop.raw
        j.add_issue_property("OPS-5", "recac.claim", {"owner": "driver", "attempt": 2})
        keys = [p.key for p in j.issue_properties("OPS-5")]
        assert keys == ["recac.claim"], keys
        assert j.issue_property("OPS-5", "recac.claim").raw["value"]["attempt"] == 2
        expect_error(404, lambda: j.issue_property("OPS-5", "missing"))

    c.run("properties", check_properties)

    c.run("404", lambda: expect_error(404, lambda: j.issue("OPS-999")))

    def check_401():
        if cloud:
            expect_error(401, lambda: JIRA(server=args.url, basic_auth=(args.user, "wrong"), timeout=10))
        else:
            expect_error(401, lambda: JIRA(server=args.url, token_auth="wrong", timeout=10))
        anonymous = JIRA(server=args.url, timeout=10)
        expect_error(401, anonymous.myself)

    c.run("401", check_401)

    def check_bad_jql():
        e = expect_error(400, lambda: j.search_issues("project = OPS AND (", fields=["summary"]))
        assert "Error in the JQL Query" in e.text, e.text

    c.run("bad JQL 400", check_bad_jql)

    total = c.passed + len(c.failed)
    print(f"RESULT {args.flavor} {c.passed}/{total}", flush=True)
    return 0 if not c.failed else 1


if __name__ == "__main__":
    sys.exit(main())
