from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import sessions, views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.SessionLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/logout/everywhere/", sessions.logout_everywhere, name="logout_everywhere"),
    path("accounts/sessions/", sessions.sessions_page, name="sessions"),
    path("accounts/sessions/list/", sessions.sessions_list, name="sessions_list"),
    path("accounts/sessions/<str:login_id>/revoke/", sessions.revoke, name="revoke_session"),
    path(
        "accounts/password_change/",
        sessions.LivePasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("session/", views.session_data, name="session_data"),
    path("session/set/", views.session_set, name="session_set"),
    path("session/delete/", views.session_delete, name="session_delete"),
    path("session/clear/", views.session_clear, name="session_clear"),
    path("session/expiry/", views.session_expiry, name="session_expiry"),
]
